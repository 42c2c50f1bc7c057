"""Prints the pip names of fedmas's dependencies (torch aside) that this Python cannot import, space-separated."""

import importlib.util

NEEDED = {"numpy": "numpy", "PIL": "pillow", "safetensors": "safetensors", "yaml": "pyyaml", "pydantic": "pydantic",
          "matplotlib": "matplotlib"}

print(" ".join(pip for module, pip in NEEDED.items() if importlib.util.find_spec(module) is None))
