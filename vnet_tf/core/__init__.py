"""What every stage uses: errors, reading and writing volumes, folders and atomic writes, label rules, process settings, the commands' error style."""
