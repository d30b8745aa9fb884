"""The Flower apps: coordinator (ServerApp), hospital (ClientApp), ledger and launcher."""
