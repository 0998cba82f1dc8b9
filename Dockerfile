# tenantplane: one static binary on a small base.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/tenantplane ./cmd/tenantplane

FROM debian:bookworm-slim
# pg_dump keeps an archive of a deleted tenant's database when TENANTPLANE_ARCHIVE_DIR is set.
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/tenantplane /usr/local/bin/tenantplane
USER nobody
EXPOSE 8080 8081
ENTRYPOINT ["tenantplane"]
CMD ["serve"]
