"""Entry point of the bedgen Gradio app (also the Hugging Face Space ``app_file``).

    python app.py [--host 0.0.0.0] [--port 7860] [--share]
"""

from bedgen.ui import main

if __name__ == "__main__":
    main()
