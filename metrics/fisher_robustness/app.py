import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("fisher_robustness")
launch_gradio_widget(module)
