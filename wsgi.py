"""WSGI entry point: ``gunicorn -k gthread -w 1 --threads 16 wsgi:app``.

Besides building the app, a serving process recovers runs whose trainer
died with a previous server, starts the first-start demo run when there is
no model yet, and starts the job runner.
"""

from busi_web import create_app
from busi_web.services import start_services

app = create_app()
start_services(app)
