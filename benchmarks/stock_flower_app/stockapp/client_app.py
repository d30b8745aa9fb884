"""The stock app's ClientApp: train and evaluate a tiny MLP on random data (flwr quickstart style)."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from stockapp.task import make_data, make_model

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = make_data(context.node_id % 10_000)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(int(context.run_config["local-epochs"])):
        for start in range(0, len(x), 64):
            optimiser.zero_grad()
            loss = loss_fn(model(x[start:start + 64]), y[start:start + 64])
            loss.backward()
            optimiser.step()
    metrics = MetricRecord({"train_loss": float(loss), "num-examples": len(x)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = make_data(context.node_id % 10_000 + 1)
    with torch.no_grad():
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    return Message(RecordDict({"metrics": MetricRecord({"eval_loss": float(loss), "num-examples": len(x)})}), reply_to=msg)
