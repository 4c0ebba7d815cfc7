"""Raises before its first training step."""
import torch
from torch import nn

model = nn.Linear(4, 2)
raise RuntimeError("dataset folder missing")
