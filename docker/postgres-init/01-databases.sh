#!/usr/bin/env bash
# Runs once, on the first start of the postgres container (empty data volume): one role and one
# database each for Dagster's instance storage and MLflow's backend store. Each role owns only
# its own database (PostgreSQL 15+: no CREATE on other databases' public schemas).
set -euo pipefail

: "${DAGSTER_POSTGRES_USER:?}" "${DAGSTER_POSTGRES_PASSWORD:?}" "${DAGSTER_POSTGRES_DB:?}"
: "${MLFLOW_POSTGRES_USER:?}" "${MLFLOW_POSTGRES_PASSWORD:?}" "${MLFLOW_POSTGRES_DB:?}"

for name in "$DAGSTER_POSTGRES_USER" "$DAGSTER_POSTGRES_DB" "$MLFLOW_POSTGRES_USER" "$MLFLOW_POSTGRES_DB"; do
  if [[ ! "$name" =~ ^[a-z_][a-z0-9_]{0,62}$ ]]; then
    echo "01-databases.sh: invalid role/database name '$name' (lower-case letters, digits, underscores)" >&2
    exit 1
  fi
done

# Passwords go in as psql variables (:'var' quotes them), never spliced into SQL text.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-postgres}" \
  -v dagster_user="$DAGSTER_POSTGRES_USER" -v dagster_password="$DAGSTER_POSTGRES_PASSWORD" \
  -v mlflow_user="$MLFLOW_POSTGRES_USER" -v mlflow_password="$MLFLOW_POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE :"dagster_user" LOGIN PASSWORD :'dagster_password';
CREATE ROLE :"mlflow_user" LOGIN PASSWORD :'mlflow_password';
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-postgres}" <<SQL
CREATE DATABASE "$DAGSTER_POSTGRES_DB" OWNER "$DAGSTER_POSTGRES_USER";
CREATE DATABASE "$MLFLOW_POSTGRES_DB" OWNER "$MLFLOW_POSTGRES_USER";
REVOKE ALL ON DATABASE "$DAGSTER_POSTGRES_DB" FROM PUBLIC;
REVOKE ALL ON DATABASE "$MLFLOW_POSTGRES_DB" FROM PUBLIC;
SQL
echo "01-databases.sh: created databases $DAGSTER_POSTGRES_DB (owner $DAGSTER_POSTGRES_USER) and $MLFLOW_POSTGRES_DB (owner $MLFLOW_POSTGRES_USER)"
