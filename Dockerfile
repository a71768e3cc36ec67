# gessync: one static binary. The same image runs the daemon (`gessync run`) and the Sage
# sandbox (`gessync sandbox`).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/gessync ./cmd/gessync

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/gessync /gessync
ENTRYPOINT ["/gessync"]
CMD ["run"]
