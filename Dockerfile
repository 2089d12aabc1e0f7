# The eventmail image: `eventmail run` by default; the chart runs `eventmail aggregate` from the same image.
#   docker build -t eventmail:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EVENTMAIL_SCHEMA_DIR=/opt/eventmail/schemas

# A fixed numeric uid/gid so Kubernetes can check runAsNonRoot without a user database lookup.
RUN groupadd --system --gid 10001 eventmail \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin eventmail

WORKDIR /build
COPY pyproject.toml README.md ./
COPY consumer ./consumer
RUN pip install . && rm -rf /build

# The Avro schemas are the wire truth; the package reads them from EVENTMAIL_SCHEMA_DIR.
COPY schemas /opt/eventmail/schemas

WORKDIR /tmp
USER 10001:10001
# 9400: `eventmail run`, 9401: `eventmail aggregate` (/metrics, /healthz, /readyz).
EXPOSE 9400 9401
ENTRYPOINT ["eventmail"]
CMD ["run"]
