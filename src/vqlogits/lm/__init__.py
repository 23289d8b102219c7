"""Training harness: data, a small GPT, the training loop and reports. The core never imports this."""
