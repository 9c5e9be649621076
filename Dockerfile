# Development image (the seed's): the project in /app, Python as the entrypoint,
# so `docker-compose run task1 task_1.py --help` runs `python task_1.py --help`
# in /app/src. docker-compose.yaml mounts ./src over /app/src: edit on the host,
# rerun without rebuilding. No secrets here: .env is read at run time.
# The manifest (what each task fetched) goes beside the data, not beside the
# read-only config.json; outside every task's folder (/app/data/taskN), so
# those hold only the results. docker-compose.yaml mounts only the task
# folders and moves it to its own mount (/app/manifest).
FROM python:3.11.8-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    DATAFERRY_DATA_DIR=/app/data \
    DATAFERRY_MANIFEST=/app/data/dataferry.manifest.json

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
# Editable, so `dataferry` on PATH runs the mounted source too; the seed's
# task scripts stay executable.
RUN pip install --no-cache-dir --no-deps --editable . \
    && chmod +x src/task_*.py \
    && mkdir -p data/task1 data/task2 data/task3

WORKDIR /app/src
# GET /metrics and /healthz while a task runs (--metrics_port 8000).
EXPOSE 8000
ENTRYPOINT ["python"]
CMD ["task_1.py", "--help"]
