"""The limit for intake throughput: FastAPI with POST routes that read the body, nothing else."""

from fastapi import FastAPI, Request

app = FastAPI()


@app.post("/webhooks/clerk")
@app.post("/v1/actions")
async def bare(request: Request) -> dict[str, str]:
    await request.body()
    return {"status": "ok"}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
