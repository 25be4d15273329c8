"""The Gradio layer: layout and event wiring only; all work happens in the engine."""
