-- First start only (an empty data volume): MLflow's backend gets its own database beside the platform's
-- (both run Alembic migrations, each with its own alembic_version table).
CREATE DATABASE mlflow OWNER bioverse;
