"""Backends: one module per way of running LeViT; `registry` knows their names and availability."""
