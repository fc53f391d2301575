"""`vidcap app`: a captioner served to browsers (Gradio, vidcap.app.ui) and programs (HTTP, vidcap.app.api), over
one CaptionService (vidcap.app.service) that loads the checkpoint once and decodes concurrent requests together.
Needs the `app` extra (gradio, which brings FastAPI and uvicorn)."""
