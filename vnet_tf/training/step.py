"""The compiled training step and the distribution strategy it runs under."""

from __future__ import annotations

import tensorflow as tf

from vnet_tf.model import deep_supervision as ds_lib


def make_strategy(name: str):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def strategy_is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is None or resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0)


def make_step(model, optimizer, loss_fn, device_aug, strategy, global_batch, average=None):
    """The compiled training step; a model with several outputs (deep supervision) has its
    outputs' losses weighted by :func:`vnet_tf.model.deep_supervision.output_weights`. With a
    :class:`~vnet_tf.model.averaging.WeightAverage`, it is updated after the optimiser step."""
    weights = ds_lib.output_weights(len(model.outputs) - 1)
    transforms = [tf.function(layer.transform, jit_compile=True) if layer.compile_with_xla else layer.transform
                  for layer in (device_aug.transforms if device_aug else [])]

    def augment(batch):
        image, label = batch["image"], batch["label"]
        for transform in transforms:
            image, label = transform(image, label)
        return image, label

    def replica_step(batch):
        image, label = augment(batch)
        with tf.GradientTape() as tape:
            outputs = model(image, training=True)
            if isinstance(outputs, (list, tuple)):
                per_sample = ds_lib.multi_scale_loss(loss_fn, label, outputs, weights)
            else:
                per_sample = loss_fn(label, outputs)
            loss = tf.reduce_sum(per_sample) / global_batch
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    @tf.function
    def step(batch):
        losses = strategy.run(replica_step, args=(batch,))
        if average is not None:
            average.update()
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return step
