"""Where workers come from: `local` (this machine) and, later, `gce`."""
