"""What each `pneumo-exp` subcommand does with its parsed arguments (main.py parses them).
Heavy imports (TensorFlow, MLflow) happen inside the commands that need them."""
