# CPU image of the explorer: python 3.11 slim, user 1000 (as Hugging Face Docker Spaces expect), port 7860.
FROM python:3.11-slim

RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    PYTHONUNBUFFERED=1
WORKDIR $HOME/app

# Same install as the Makefile: the pinned CPU torch first, then the project (which brings tiny.en).
COPY --chown=user pyproject.toml README.md ./
COPY --chown=user engine ./engine
COPY --chown=user serving ./serving
COPY --chown=user ui ./ui
COPY --chown=user docs ./docs
RUN pip install --no-cache-dir --user torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir --user .
COPY --chown=user . .
# Convert tiny.en once at build time so the first page load does not wait for it, and compile the GPTQ loop into
# numba's cache.
RUN python -c "from engine.whisper.models import load_model; load_model('tiny.en'); import engine.quant.methods.gptq_kernels"

EXPOSE 7860
CMD ["python", "app.py"]
