"""Inputs: data sets (embedded, the paper's torchvision sets from a local folder, caption folders),
misalignment injection, encoders, frozen features."""
