"""The engine never imports gradio: the UI depends on the engine, not the other way round."""

import subprocess
import sys


def test_engine_imports_without_gradio():
    code = (
        "import sys, engine.cli, engine.evaluate, engine.models, engine.transcribe, engine.samples, "
        "engine.model_cache, engine.record; assert 'gradio' not in sys.modules, 'engine imported gradio'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
