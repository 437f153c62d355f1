# One image for the runtime and the example functions (docker-compose.yml runs both).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY statefun ./statefun
COPY sdk ./sdk
COPY runtime ./runtime
RUN pip install --no-cache-dir .
COPY examples ./examples
ENV PYTHONUNBUFFERED=1
CMD ["statefun", "--help"]
