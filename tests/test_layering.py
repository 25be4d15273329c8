"""Layers: the library (engine/, with its CLI) never imports gradio or the serving package; the serving
package never imports gradio; only ui/ meets gradio."""

import subprocess
import sys

from tests.helpers import REPO


def modules(package: str) -> list[str]:
    return sorted(".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / package).rglob("*.py")
                  if p.name != "__init__.py")


def imported_after(names: list[str]) -> set[str]:
    code = ("import sys\n" + "".join(f"import {n}\n" for n in names) +
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    return set(done.stdout.split())


def test_the_library_imports_neither_gradio_nor_the_server():
    loaded = imported_after(modules("engine"))
    assert "gradio" not in loaded and "serving" not in loaded and "ui" not in loaded


def test_the_serving_package_does_not_import_gradio():
    loaded = imported_after(modules("serving"))
    assert "gradio" not in loaded and "ui" not in loaded
