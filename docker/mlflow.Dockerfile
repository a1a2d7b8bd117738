# The MLflow tracking server of manifests/ (Postgres backend, artifacts proxied to MinIO).
# Same MLflow as the project pins; psycopg2 for Postgres, boto3 for S3. Non-root, no credentials.
FROM python:3.11.7-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY docker/constraints.txt /tmp/constraints.txt
RUN pip install "mlflow==3.17.2" "boto3" "psycopg2-binary==2.9.13" -c /tmp/constraints.txt \
 && rm /tmp/constraints.txt
RUN useradd --create-home --uid 1000 mlflow
USER 1000
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--help"]
