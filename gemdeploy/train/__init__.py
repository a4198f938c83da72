"""Training machinery shared by every stage: devices, the epoch loop, resumable phases, masked training."""
