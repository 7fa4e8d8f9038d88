"""UI-free core: never imports textual, rich or llamaforge_tui.tui; torch/transformers only inside functions."""
