"""Ollama: the model store (manifests, names, layers), the server API, TEMPLATE rendering (Go templates),
Modelfiles and registration. May import ``gguf`` and the shared core modules; never ``hub`` or ``data``."""
