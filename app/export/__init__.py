"""`journeys export`: aggregates and profiles to CSV or Parquet, for spreadsheets and warehouses."""
