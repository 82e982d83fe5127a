# Airflow with the DAG folder. In kubernetes mode the DAGs only need the light part of the library (contract
# models and the DAG factory: pydantic + PyYAML, both already in Airflow), so the library is installed without
# its dependencies and Airflow's own pins stay untouched. Every step runs in the platform image.
#   docker build -f docker/airflow.Dockerfile -t registry.example.com/feature-platform-airflow:$(git rev-parse --short HEAD) .
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root pyproject.toml README.md /opt/feature-platform/
COPY --chown=airflow:root src /opt/feature-platform/src
RUN pip install --no-cache-dir --no-deps /opt/feature-platform \
 && pip install --no-cache-dir "apache-airflow==3.3.2" "apache-airflow-providers-cncf-kubernetes" "apache-airflow-providers-slack" \
      --constraint "https://raw.githubusercontent.com/apache/airflow/constraints-3.3.2/constraints-3.11.txt"
COPY --chown=airflow:root dags /opt/airflow/dags
