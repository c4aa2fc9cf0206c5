"""The baseline: a bare Flask endpoint that reads the body and returns 200, nothing else."""

from flask import Flask, request

app = Flask("bare")


@app.post("/hooks/salesforce/events")
def bare() -> tuple[str, int, dict[str, str]]:
    request.get_data()
    return '{"stored":1,"duplicates":0,"ignored":0}', 200, {"content-type": "application/json"}
