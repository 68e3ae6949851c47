"""The LightningModule that glues policy, references and objective, and its metrics."""
