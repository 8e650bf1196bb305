#!/usr/bin/env bash
# Creates the pipeline's least-privilege MySQL account. Runs once, on the first start of the
# mysql container (docker-entrypoint-initdb.d); also usable by hand against any MySQL 8 /
# MariaDB 10.6+ server:  MYSQL_DATABASE=crm SEGMENTATION_DB_USER=segmenter \
#   SEGMENTATION_DB_PASSWORD=... docker/mysql-init/02-pipeline-user.sh --print-sql | mysql -uroot -p
#
# What the account may do, and why (table-level grants; MySQL has no wildcard table grants,
# so every name the pipeline ever uses is listed):
#   SELECT                         on the source table (default `customers`): extraction and
#                                  scoring only read it. It must exist first (01-schema.sql).
#   SELECT, INSERT, DELETE,
#   CREATE, DROP, ALTER, INDEX     on the pipeline's own tables, and only those:
#       customer_segments, customer_rejects
#           replaced atomically after training (storage/swap.py write_tables_atomic):
#           bulk-loaded into `<table>__staging` (CREATE; INSERT via LOAD DATA LOCAL INFILE,
#           which needs no FILE privilege), swapped in with
#           `RENAME TABLE t TO t__old, t__staging TO t` (ALTER+DROP on the old names,
#           CREATE+INSERT on the new ones), then `DROP TABLE t__old`. So each also needs
#           its `__staging` and `__old` names.
#       customer_segments__incoming, customer_rejects__incoming, customer_segments__incoming_ids
#           incremental scoring (storage/segment_store.py upsert_segments): the new rows and
#           their ids are staged (written like the above, with their own __staging/__old
#           names), then `DELETE ... JOIN` + `INSERT ... SELECT` into the live tables in one
#           transaction, then the incoming tables are dropped.
#       segment_assignments
#           append-only history: created once with an index (CREATE, INDEX); a re-run of the
#           same Dagster run replaces its own rows (DELETE + INSERT).
#       pipeline_run_failures
#           one row per failed run (automation.py run_failure_recorder): CREATE once, then
#           DELETE + INSERT.
#   Nothing else: no global privileges, no FILE, no GRANT OPTION, no access to other tables.
#   GET_LOCK (serialises writers) and information_schema reads need no grant.
# Grants are by name, so they survive the RENAME swaps. CREATE in each grant lets it name a
# table that does not exist yet.
set -euo pipefail

: "${MYSQL_DATABASE:?set MYSQL_DATABASE (the database holding the customer table)}"
: "${SEGMENTATION_DB_USER:?set SEGMENTATION_DB_USER (the pipeline account to create)}"
: "${SEGMENTATION_DB_PASSWORD:?set SEGMENTATION_DB_PASSWORD (from .env, never committed)}"
SEGMENTATION_DB_USER_HOST="${SEGMENTATION_DB_USER_HOST:-%}"
SEGMENTATION_SOURCE_TABLE="${SEGMENTATION_SOURCE_TABLE:-customers}"

# Tables written with a staging swap: each also gets its __staging and __old names.
SWAPPED_TABLES=(
  customer_segments customer_rejects                                            # training
  customer_segments__incoming customer_rejects__incoming customer_segments__incoming_ids  # scoring
)
# Tables the pipeline creates and writes in place.
OWN_TABLES=(segment_assignments pipeline_run_failures)
OWN_PRIVILEGES="SELECT, INSERT, DELETE, CREATE, DROP, ALTER, INDEX"

_identifier() {  # refuse anything but a plain identifier: these names are spliced into SQL
  if [[ ! "$1" =~ ^[A-Za-z0-9_]{1,64}$ ]]; then
    echo "02-pipeline-user.sh: invalid $2 '$1' (letters, digits, underscores only)" >&2
    return 1
  fi
}

_string() {  # a single-quoted SQL string literal
  local s=${1//\\/\\\\}
  s=${s//\'/\'\'}
  printf "'%s'" "$s"
}

pipeline_user_sql() {
  _identifier "$MYSQL_DATABASE" database
  _identifier "$SEGMENTATION_DB_USER" user
  _identifier "$SEGMENTATION_SOURCE_TABLE" "source table"
  if [[ ! "$SEGMENTATION_DB_USER_HOST" =~ ^[A-Za-z0-9_.%:-]{1,255}$ ]]; then
    echo "02-pipeline-user.sh: invalid host '$SEGMENTATION_DB_USER_HOST'" >&2
    return 1
  fi
  local account db table
  account="$(_string "$SEGMENTATION_DB_USER")@$(_string "$SEGMENTATION_DB_USER_HOST")"
  db="\`$MYSQL_DATABASE\`"
  echo "CREATE USER IF NOT EXISTS $account IDENTIFIED BY $(_string "$SEGMENTATION_DB_PASSWORD");"
  echo "ALTER USER $account IDENTIFIED BY $(_string "$SEGMENTATION_DB_PASSWORD");"
  echo "GRANT SELECT ON $db.\`$SEGMENTATION_SOURCE_TABLE\` TO $account;"
  for table in "${SWAPPED_TABLES[@]}"; do
    for name in "$table" "${table}__staging" "${table}__old"; do
      echo "GRANT $OWN_PRIVILEGES ON $db.\`$name\` TO $account;"
    done
  done
  for table in "${OWN_TABLES[@]}"; do
    echo "GRANT $OWN_PRIVILEGES ON $db.\`$table\` TO $account;"
  done
}

_apply() {
  if declare -F docker_process_sql >/dev/null; then
    # sourced by the mysql image's entrypoint during initialisation
    pipeline_user_sql | docker_process_sql --database=mysql
  else
    # executed: the entrypoint's temporary server listens on the socket only
    pipeline_user_sql | MYSQL_PWD="${MYSQL_ROOT_PASSWORD:-}" mysql --protocol=socket -uroot mysql
  fi
  echo "02-pipeline-user.sh: created ${SEGMENTATION_DB_USER}@${SEGMENTATION_DB_USER_HOST} with least-privilege grants on ${MYSQL_DATABASE}"
}

if [[ "${1:-}" == "--print-sql" ]]; then
  pipeline_user_sql
else
  _apply
fi
