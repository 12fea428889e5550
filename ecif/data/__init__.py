"""Inputs: embedded and torchvision data sets, misalignment injection, encoders, frozen features."""
