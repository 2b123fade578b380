"""The procedural road world: DriveGPT's embedded data source and ground truth."""
