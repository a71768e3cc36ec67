-- A small, realistic, fictional sample of two UK gas engineers' books, for the demo and tests.
INSERT INTO companies (id, name, vat_registered) VALUES
  (1, 'Hartley Heating & Gas Ltd', true),
  (2, 'Pennine Boiler Services', true);
SELECT setval('companies_id_seq', 2);

INSERT INTO customers (id, company_id, account_ref, customer_type, title, first_name, last_name, company_name, email, phone, mobile,
                       address_line1, address_line2, town, county, postcode, vat_number, cis_registered, cis_rate, payment_terms_days, notes) VALUES
  (1, 1, 'BENN01', 'domestic', 'Mrs', 'Margaret', 'Bennett', NULL, 'm.bennett@example.co.uk', '0113 496 0123', '07700 900123',
      '14 Larch Grove', NULL, 'Leeds', 'West Yorkshire', 'LS6 2AB', NULL, false, NULL, 14, 'Side gate code 4412. Dog friendly.'),
  (2, 1, 'OKAF01', 'landlord', 'Mr', 'Tunde', 'Okafor', NULL, 'tunde.okafor@example.com', NULL, '07700 900456',
      '7 Aire Street', 'Flat 3', 'Leeds', 'West Yorkshire', 'LS1 4PR', NULL, false, NULL, 30, 'Landlord: 6 properties, annual gas safety in March.'),
  (3, 1, 'CALD01', 'commercial', NULL, NULL, NULL, 'Calder Building Contractors Ltd', 'accounts@calder-build.example', '01422 555010', NULL,
      'Unit 5, Mytholm Works', 'Mytholmroyd', 'Hebden Bridge', 'West Yorkshire', 'HX7 5LJ', 'GB123456789', true, 20.00, 30, NULL),
  (4, 2, 'PATE01', 'domestic', 'Dr', 'Anjali', 'Patel', NULL, 'anjali.patel@example.org', '0161 496 0777', NULL,
      '22 Moorside Road', NULL, 'Oldham', 'Greater Manchester', 'OL4 2JT', NULL, false, NULL, 30, NULL),
  (5, 2, 'NWLA01', 'letting_agent', NULL, NULL, NULL, 'North West Lettings', 'maintenance@nwlettings.example', '0161 555 0199', NULL,
      '88 Yorkshire Street', NULL, 'Rochdale', 'Greater Manchester', 'OL16 1JZ', NULL, false, NULL, 30, NULL);
SELECT setval('customers_id_seq', 5);

INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, due_date, job_reference, site_address,
                      vat_reverse_charge, line_items, subtotal, vat_total, total, cis_deduction, notes) VALUES
  (1, 1, 1, 'HH-1001', 'issued', '2026-11-02', '2026-11-16', 'JOB-5521', '14 Larch Grove, Leeds LS6 2AB', false,
   '[{"description":"Annual boiler service","quantity":1,"unit_price":85.00,"vat_rate":20,"kind":"labour"},
     {"description":"Magnetic filter clean","quantity":1,"unit_price":25.00,"vat_rate":20,"kind":"labour"}]',
   110.00, 22.00, 132.00, 0, NULL),
  (2, 1, 2, 'HH-1002', 'issued', '2026-11-05', '2026-12-05', 'JOB-5530', '7 Aire Street, Flat 3, Leeds', false,
   '[{"description":"Landlord gas safety certificate (CP12)","quantity":1,"unit_price":65.00,"vat_rate":20,"kind":"labour"},
     {"description":"Carbon monoxide alarm","quantity":2,"unit_price":18.50,"vat_rate":20,"kind":"materials"}]',
   102.00, 20.40, 122.40, 0, NULL),
  (3, 1, 1, 'HH-1003', 'draft', NULL, NULL, 'JOB-5544', NULL, false,
   '[{"description":"Radiator valve replacement","quantity":2,"unit_price":12.50,"vat_rate":20,"kind":"materials"}]',
   25.00, 5.00, 30.00, 0, NULL),
  (4, 2, 4, 'PB-0210', 'issued', '2026-11-10', '2026-12-10', NULL, NULL, false,
   '[{"description":"Boiler repair: replace diverter valve","quantity":1,"unit_price":145.00,"vat_rate":20,"kind":"labour"},
     {"description":"Diverter valve","quantity":1,"unit_price":62.40,"vat_rate":20,"kind":"materials"}]',
   207.40, 41.48, 248.88, 0, NULL);
SELECT setval('invoices_id_seq', 4);

INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on, reference) VALUES
  (1, 1, 1, 132.00, 'card', '2026-11-03', 'SUMUP-88231'),
  (2, 2, 4, 100.00, 'bank_transfer', '2026-11-12', 'PATEL BOILER');
SELECT setval('payments_id_seq', 2);
