"""OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, as a response.

Every refusal names the field at fault (`param`) where there is one, so a client library shows
the user what to fix; the status says whose fault it is (4xx the request's, 5xx the server's).
"""

from __future__ import annotations

from starlette.responses import JSONResponse

TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "server_error",
    504: "server_error",
}


class ApiError(Exception):
    """A request refused with `status`: `message` for the user, `param` the field at fault."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(err: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {
        "error": {
            "message": err.message,
            "type": TYPES.get(err.status, "invalid_request_error"),
            "param": err.param,
            "code": err.code,
        }
    }
    return JSONResponse(body, status_code=err.status, headers=headers)
