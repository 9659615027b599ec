"""The inside of an emulated VM: its metadata server, its PATH, its startup script's process tree."""
