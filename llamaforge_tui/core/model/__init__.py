"""Sources to a trainable torch model: source resolution, the Ollama to Hugging Face base mapping, loading,
the dequant cache, memory estimates, quantized layers and LoRA weights. May import every layer below it."""
