# One image for the whole stack: the pipeline's user code (dagster code-server), the Dagster
# webserver and daemon, and the MLflow tracking server (same pinned Dagster/MLflow versions
# everywhere, psycopg2 for the PostgreSQL stores). See docker-compose.yml.
#
#   docker build -t segmentation-pipeline .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    SEGMENTATION_CONFIG=/opt/dagster/app/docker/segmentation.yaml \
    SEGMENTATION_DATA_DIR=/opt/dagster/data

# Unprivileged runtime user; the directories that back named volumes are created (and owned)
# here so fresh volumes inherit the ownership.
RUN groupadd --system --gid 1000 dagster \
    && useradd --system --uid 1000 --gid dagster --home-dir /opt/dagster --shell /usr/sbin/nologin dagster \
    && mkdir -p /opt/dagster/app /opt/dagster/dagster_home /opt/dagster/data /opt/dagster/compute_logs \
                /opt/dagster/storage /mlflow/artifacts \
    && chown -R dagster:dagster /opt/dagster /mlflow

WORKDIR /opt/dagster/app

# Dependencies first (cached across code-only changes): install the project's declared
# dependencies from pyproject.toml, then the package itself.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt

COPY segmentation_pipeline ./segmentation_pipeline
COPY configs ./configs
COPY docker/segmentation.yaml ./docker/segmentation.yaml
# Non-editable install: the `segmentation` console script and the importable package.
RUN pip install --no-deps . \
    && python -c "import dagster_postgres, psycopg2, segmentation_pipeline.config"

COPY --chown=dagster:dagster docker/dagster.yaml docker/workspace.yaml /opt/dagster/dagster_home/

USER dagster
EXPOSE 3000 4000 5000

# The default command serves the code location; docker-compose.yml sets each service's own.
CMD ["dagster", "code-server", "start", "-m", "segmentation_pipeline.definitions", "-h", "0.0.0.0", "-p", "4000"]
