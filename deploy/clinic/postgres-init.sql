-- First start only (an empty data volume): the production profile's other databases beside the
-- platform's (POSTGRES_DB): MLflow's backend and Feast's registry (feature_store/profile.py names them).
CREATE DATABASE bioverse_mlflow OWNER bioverse;
CREATE DATABASE bioverse_feast OWNER bioverse;
