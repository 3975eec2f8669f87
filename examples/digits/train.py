"""A small PyTorch MLP on scikit-learn's digits: reads DATA_DIR, logs val_acc, saves the model."""

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wml_jupyter import run

hp = run.hparams()
lr, hidden, epochs = float(hp.get("lr", 0.01)), int(hp.get("hidden", 64)), int(hp.get("epochs", 10))
batch_size = int(hp.get("batch", 64))
torch.manual_seed(int(hp.get("seed", 0)))
torch.set_num_threads(int(os.environ.get("WML_TORCH_THREADS", "1")))  # runs share the cores
device = "cuda" if torch.cuda.is_available() else "cpu"
print(f"training on {device} with lr={lr} hidden={hidden}")

data = np.load(Path(os.environ["DATA_DIR"]) / "digits.npz")
x_train, y_train = torch.tensor(data["x_train"]).to(device), torch.tensor(data["y_train"]).to(device)
x_val, y_val = torch.tensor(data["x_val"]).to(device), torch.tensor(data["y_val"]).to(device)

model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)).to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=lr)
for epoch in range(1, epochs + 1):
    for batch in torch.randperm(len(x_train), device=device).split(batch_size):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        val_acc = (model(x_val).argmax(1) == y_val).float().mean().item()
    run.log(step=epoch, loss=loss.item(), val_acc=val_acc)
    print(f"epoch {epoch}: loss {loss.item():.4f} val_acc {val_acc:.4f}")

torch.save(model.state_dict(), Path(os.environ["RESULT_DIR"]) / "model.pt")
