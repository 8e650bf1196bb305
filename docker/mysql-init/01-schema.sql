-- Runs once, on the first start of the mysql container (empty data volume), inside
-- $MYSQL_DATABASE (the entrypoint creates it and selects it for *.sql files).
--
-- The source table the pipeline reads (config `source.table`, `source.id_column`,
-- `source.updated_at_column`, `features`, `cleaning.categorical`). Load your customers into it,
-- or replace it with `segmentation demo-data` / `segmentation load-csv` run with admin
-- credentials (docker compose --profile demo run --rm seed-demo). The pipeline's own tables
-- (customer_segments, customer_rejects, segment_assignments, pipeline_run_failures) are created
-- by the pipeline itself on its first run; 02-pipeline-user.sh grants it exactly what that needs.
CREATE TABLE IF NOT EXISTS customers (
    customer_id    BIGINT       NOT NULL,
    gender         VARCHAR(16)  NULL,
    age            INT          NULL,
    annual_income  DOUBLE       NULL,
    spending_score INT          NULL,
    updated_at     DATETIME(6)  NULL,
    PRIMARY KEY (customer_id),
    KEY ix_customers_updated_at (updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
