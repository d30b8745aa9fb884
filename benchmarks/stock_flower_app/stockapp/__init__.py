"""Stock Flower quickstart-style app: FedAvg over a tiny torch MLP on random data."""
