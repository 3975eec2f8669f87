# The wml backend: `wml-backend serve`. Build from the repository root:
#   docker build -f backend/deploy/docker/backend.Dockerfile -t wml-backend:0.1.0 .
FROM python:3.11-slim

# python-dateutil<3 keeps pip from backtracking between kubernetes and botocore.
RUN --mount=type=bind,source=backend,target=/src/backend,rw \
    pip install --no-cache-dir /src/backend/core /src/backend/runner \
      "/src/backend/server[kubernetes,postgres]" "python-dateutil<3"

RUN useradd --uid 10001 --create-home wml && mkdir -p /var/lib/wml && chown wml /var/lib/wml
USER 10001
ENV WML_HOME=/var/lib/wml/home PYTHONUNBUFFERED=1
EXPOSE 8642
ENTRYPOINT ["wml-backend"]
# Serving beyond loopback needs TLS (--tls-cert/--tls-key) or an explicit --insecure:
# backend/deploy/deployment.yaml says which, with its reasons.
CMD ["serve", "--host", "0.0.0.0", "--port", "8642", "--executor", "kubernetes"]
