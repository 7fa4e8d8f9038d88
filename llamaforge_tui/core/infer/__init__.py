"""Trying a fine-tune after its run: chat backends (a run's base with its adapter toggled on and off, an
exported GGUF through the llama.cpp runner, an Ollama model through its API) and the evaluation of base vs
tuned. The top core layer: may import every other core package."""
