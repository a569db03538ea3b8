# One image for both roles: `chainrule api` and `chainrule worker`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY graphspec ./graphspec
COPY runtime ./runtime
COPY worker ./worker
COPY service ./service
COPY examples ./examples
RUN pip install . && useradd --create-home --uid 10001 chainrule
USER chainrule

EXPOSE 8000
CMD ["chainrule", "api", "--host", "0.0.0.0", "--port", "8000"]
