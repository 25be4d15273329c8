"""Start the ASR Quantization Explorer web app (http://127.0.0.1:7860)."""

from ui.app import launch

if __name__ == "__main__":
    launch()
