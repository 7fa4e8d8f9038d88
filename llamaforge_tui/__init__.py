"""LlamaForge TUI: fine-tune your Ollama models from the terminal."""

__version__ = "0.2.0"
