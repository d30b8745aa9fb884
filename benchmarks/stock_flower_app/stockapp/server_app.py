"""The stock app's ServerApp: Flower's FedAvg; writes a timestamp after every round to timing-file."""

import json
import time

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from stockapp.task import make_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    nodes = int(context.run_config["min-nodes"])
    timing = str(context.run_config["timing-file"])

    def mark(server_round: int, arrays: ArrayRecord) -> None:
        if timing:
            with open(timing, "a") as out:
                out.write(json.dumps({"round": server_round, "time": time.time()}) + "\n")

    strategy = FedAvg(min_train_nodes=nodes, min_evaluate_nodes=nodes, min_available_nodes=nodes)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(make_model().state_dict()),
                   num_rounds=int(context.run_config["num-server-rounds"]), evaluate_fn=mark)
