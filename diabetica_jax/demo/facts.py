"""Diabetes facts behind the demo corpus, consistent with the ADA Standards of Care and the Chinese
Diabetes Society guideline. DEMO DATA, NOT FOR CLINICAL USE: short, simplified, for pipeline tests.

Each fact gives bilingual question/answer phrasings and, where it fits, a multiple-choice item.
"""

FACTS = [
    {
        "qa": [
            ("糖尿病的空腹血糖诊断标准是多少？", "空腹血糖≥7.0 mmol/L（126 mg/dL）可作为糖尿病的诊断标准之一，无明确高血糖症状时需另日复查确认。"),
            ("What fasting plasma glucose level is diagnostic of diabetes?", "A fasting plasma glucose of 7.0 mmol/L (126 mg/dL) or higher is diagnostic of diabetes; without clear symptoms it should be confirmed by repeat testing."),
        ],
        "mcq": ("诊断糖尿病的空腹血糖切点是", ["≥5.6 mmol/L", "≥6.1 mmol/L", "≥7.0 mmol/L", "≥7.8 mmol/L", "≥11.1 mmol/L"], "C"),
    },
    {
        "qa": [
            ("口服葡萄糖耐量试验2小时血糖多少可诊断糖尿病？", "75 g口服葡萄糖耐量试验中，2小时血浆葡萄糖≥11.1 mmol/L（200 mg/dL）可诊断糖尿病。"),
            ("Which 2-hour OGTT value diagnoses diabetes?", "In a 75 g oral glucose tolerance test, a 2-hour plasma glucose of 11.1 mmol/L (200 mg/dL) or higher diagnoses diabetes."),
        ],
        "mcq": ("75 g OGTT诊断糖尿病的2小时血糖标准为", ["≥7.8 mmol/L", "≥8.5 mmol/L", "≥10.0 mmol/L", "≥11.1 mmol/L", "≥13.9 mmol/L"], "D"),
    },
    {
        "qa": [
            ("糖化血红蛋白多少可以诊断糖尿病？", "在标准化实验室检测条件下，糖化血红蛋白（HbA1c）≥6.5%可作为糖尿病的补充诊断标准。"),
            ("What HbA1c value is used to diagnose diabetes?", "An HbA1c of 6.5% (48 mmol/mol) or higher, measured with a standardised assay, is a diagnostic criterion for diabetes."),
        ],
        "mcq": ("采用HbA1c诊断糖尿病的切点为", ["≥5.7%", "≥6.0%", "≥6.5%", "≥7.0%", "≥8.0%"], "C"),
    },
    {
        "qa": [
            ("大多数成年2型糖尿病患者的糖化血红蛋白控制目标是多少？", "大多数非妊娠成年2型糖尿病患者的HbA1c控制目标为<7.0%，可根据年龄、病程和低血糖风险个体化调整。"),
            ("What is the usual HbA1c target for non-pregnant adults with type 2 diabetes?", "For most non-pregnant adults the HbA1c goal is below 7%, individualised for age, disease duration and hypoglycaemia risk."),
        ],
        "mcq": ("大多数非妊娠成人2型糖尿病患者HbA1c的控制目标为", ["<6.0%", "<6.5%", "<7.0%", "<8.0%", "<9.0%"], "C"),
    },
    {
        "qa": [
            ("低血糖的分级标准是什么？", "1级低血糖为血糖<3.9 mmol/L且≥3.0 mmol/L；2级为血糖<3.0 mmol/L；3级为需要他人帮助的严重事件。"),
            ("How is hypoglycaemia classified?", "Level 1 is glucose below 3.9 mmol/L (70 mg/dL) but at least 3.0 mmol/L; level 2 is below 3.0 mmol/L (54 mg/dL); level 3 is a severe event needing another person's help."),
        ],
        "mcq": ("2级低血糖是指血糖低于", ["3.0 mmol/L", "3.9 mmol/L", "4.4 mmol/L", "2.2 mmol/L", "5.0 mmol/L"], "A"),
    },
    {
        "qa": [
            ("清醒的糖尿病患者发生低血糖应如何处理？", "清醒患者应口服15–20 g葡萄糖或含糖食物，15分钟后复测血糖，仍低则重复，血糖恢复后进食以防再次下降。"),
            ("How should a conscious person with diabetes treat hypoglycaemia?", "Take 15–20 g of glucose, recheck glucose after 15 minutes and repeat if still low; once it normalises, eat a meal or snack to prevent recurrence."),
        ],
        "mcq": ("清醒患者发生低血糖时首先应", ["立即注射胰岛素", "口服15–20 g葡萄糖", "大量饮水", "立即运动", "停用所有药物一周"], "B"),
    },
    {
        "qa": [
            ("2型糖尿病首选的降糖药物是什么？", "若无禁忌证，二甲双胍是2型糖尿病药物治疗的首选和基础用药，并可与其他降糖药联合使用。"),
            ("Which drug is usually first-line for type 2 diabetes in the Chinese guideline?", "Unless contraindicated, metformin is the preferred first-line glucose-lowering drug and remains in combination regimens."),
        ],
        "mcq": ("无禁忌证的2型糖尿病患者首选的口服降糖药是", ["格列本脲", "二甲双胍", "阿卡波糖", "瑞格列奈", "吡格列酮"], "B"),
    },
    {
        "qa": [
            ("肾功能下降时二甲双胍应如何使用？", "eGFR<30 mL/min/1.73m²时禁用二甲双胍；eGFR 30–45时不建议起始使用，已在用者需评估并减量。"),
            ("When is metformin contraindicated because of kidney function?", "Metformin is contraindicated when eGFR is below 30 mL/min/1.73 m²; starting it at an eGFR of 30–45 is not recommended."),
        ],
        "mcq": ("二甲双胍禁用于eGFR低于多少的患者", ["90", "60", "45", "30", "15"], "D"),
    },
    {
        "qa": [
            ("长期服用二甲双胍需要注意什么？", "长期使用二甲双胍可能导致维生素B12缺乏，应定期监测，尤其是出现周围神经病变时；常见不良反应为胃肠道反应。"),
            ("What should be monitored during long-term metformin use?", "Long-term metformin can cause vitamin B12 deficiency, so B12 should be checked periodically, especially with peripheral neuropathy; gastrointestinal upset is the commonest side effect."),
        ],
        "mcq": ("长期使用二甲双胍可能导致哪种维生素缺乏", ["维生素A", "维生素B1", "维生素B12", "维生素C", "维生素D"], "C"),
    },
    {
        "qa": [
            ("合并心力衰竭的2型糖尿病患者推荐使用哪类降糖药？", "合并心力衰竭的2型糖尿病患者推荐使用有心衰获益证据的SGLT2抑制剂，且不依赖于HbA1c水平。"),
            ("Which drug class is recommended for people with type 2 diabetes and heart failure?", "An SGLT2 inhibitor with proven heart-failure benefit is recommended, independent of the HbA1c level."),
        ],
        "mcq": ("2型糖尿病合并心力衰竭患者优先推荐", ["磺脲类", "SGLT2抑制剂", "噻唑烷二酮类", "胰岛素促泌剂", "α-糖苷酶抑制剂"], "B"),
    },
    {
        "qa": [
            ("SGLT2抑制剂常见的不良反应有哪些？", "SGLT2抑制剂常见不良反应为生殖器真菌感染，少数可发生血糖不高的酮症酸中毒，术前或急性疾病时应暂停。"),
            ("What are common side effects of SGLT2 inhibitors?", "Genital fungal infections are common, and euglycaemic ketoacidosis can occur; they should be paused before surgery or during acute illness."),
        ],
        "mcq": ("SGLT2抑制剂最常见的不良反应是", ["体重增加", "生殖器真菌感染", "低血糖", "水肿", "乳酸酸中毒"], "B"),
    },
    {
        "qa": [
            ("GLP-1受体激动剂有哪些特点？", "GLP-1受体激动剂可降低血糖和体重，部分药物有心血管获益；常见胃肠道反应，有甲状腺髓样癌个人或家族史者禁用。"),
            ("What are the main features of GLP-1 receptor agonists?", "They lower glucose and body weight and several reduce cardiovascular events; nausea is common, and they are contraindicated with a personal or family history of medullary thyroid carcinoma."),
        ],
        "mcq": ("GLP-1受体激动剂禁用于有哪种病史的患者", ["甲状腺髓样癌", "高血压", "骨质疏松", "痛风", "哮喘"], "A"),
    },
    {
        "qa": [
            ("糖尿病患者的血压控制目标是多少？", "多数糖尿病患者血压控制目标为<130/80 mmHg，合并蛋白尿者首选ACEI或ARB类降压药。"),
            ("What blood pressure target is recommended for most people with diabetes?", "Below 130/80 mmHg for most people with diabetes; an ACE inhibitor or ARB is preferred when albuminuria is present."),
        ],
        "mcq": ("糖尿病合并蛋白尿的高血压患者首选", ["β受体阻滞剂", "利尿剂", "ACEI或ARB", "钙通道阻滞剂", "α受体阻滞剂"], "C"),
    },
    {
        "qa": [
            ("糖尿病患者应多久筛查一次糖尿病肾病？", "糖尿病患者应至少每年检测一次尿白蛋白/肌酐比值（UACR）和估算肾小球滤过率（eGFR）。"),
            ("How often should people with diabetes be screened for kidney disease?", "At least once a year, with a urine albumin-to-creatinine ratio (UACR) and an estimated glomerular filtration rate (eGFR)."),
        ],
        "mcq": ("糖尿病肾病筛查推荐每年检测", ["血尿酸", "UACR和eGFR", "尿比重", "肾脏B超", "血清白蛋白"], "B"),
    },
    {
        "qa": [
            ("2型糖尿病患者何时开始筛查视网膜病变？", "2型糖尿病患者确诊时即应进行眼底检查；1型糖尿病患者在发病5年内开始筛查，之后定期随访。"),
            ("When should retinopathy screening start?", "People with type 2 diabetes should have an eye examination at diagnosis; people with type 1 diabetes within five years of onset, then regularly."),
        ],
        "mcq": ("2型糖尿病患者首次眼底筛查的时间是", ["确诊时", "确诊后5年", "出现视力下降时", "确诊后10年", "无需筛查"], "A"),
    },
    {
        "qa": [
            ("糖尿病足的预防措施有哪些？", "每天检查双足，选择合适的鞋袜，每年至少进行一次足部检查（包括10 g尼龙丝感觉检查），戒烟。"),
            ("How can diabetic foot ulcers be prevented?", "Inspect the feet daily, wear well-fitting footwear, have a foot examination with a 10 g monofilament at least once a year, and stop smoking."),
        ],
        "mcq": ("糖尿病患者足部保护性感觉检查常用", ["音叉128 Hz", "10 g尼龙丝", "叩诊锤", "压力计", "体温计"], "B"),
    },
    {
        "qa": [
            ("糖尿病患者推荐的运动量是多少？", "成年糖尿病患者每周至少150分钟中等强度有氧运动，分布在至少3天，不连续2天以上不运动，并每周进行2–3次抗阻训练。"),
            ("How much exercise is recommended for adults with diabetes?", "At least 150 minutes of moderate-intensity aerobic activity per week over at least three days, with no more than two consecutive days off, plus resistance training two to three times a week."),
        ],
        "mcq": ("成年糖尿病患者每周推荐中等强度有氧运动至少", ["60分钟", "90分钟", "120分钟", "150分钟", "300分钟"], "D"),
    },
    {
        "qa": [
            ("超重的2型糖尿病患者减重多少可以改善血糖？", "超重或肥胖的2型糖尿病患者减轻体重5%以上即可改善血糖、血压和血脂，减重越多获益越大。"),
            ("How much weight loss improves glucose in overweight type 2 diabetes?", "Losing at least 5% of body weight improves glucose, blood pressure and lipids, and larger losses bring larger benefits."),
        ],
        "mcq": ("超重2型糖尿病患者至少减重多少可改善代谢指标", ["1%", "2%", "5%", "20%", "30%"], "C"),
    },
    {
        "qa": [
            ("持续葡萄糖监测的目标范围内时间是多少？", "多数糖尿病患者血糖在3.9–10.0 mmol/L范围内的时间（TIR）应>70%，低于3.9 mmol/L的时间<4%。"),
            ("What time-in-range goal is used with continuous glucose monitoring?", "For most people, time in range 3.9–10.0 mmol/L should exceed 70%, with less than 4% of time below 3.9 mmol/L."),
        ],
        "mcq": ("多数糖尿病患者CGM目标范围内时间（TIR）应大于", ["30%", "50%", "70%", "90%", "100%"], "C"),
    },
    {
        "qa": [
            ("妊娠期糖尿病何时筛查？", "无糖尿病史的孕妇在妊娠24–28周进行75 g OGTT，空腹≥5.1、1小时≥10.0或2小时≥8.5 mmol/L任一项即可诊断。"),
            ("When and how is gestational diabetes screened?", "At 24–28 weeks with a 75 g OGTT; fasting 5.1, 1-hour 10.0 or 2-hour 8.5 mmol/L or higher, any one value, makes the diagnosis."),
        ],
        "mcq": ("妊娠期糖尿病筛查通常在妊娠第几周进行", ["8–12周", "12–16周", "24–28周", "32–36周", "分娩前"], "C"),
    },
    {
        "qa": [
            ("1型糖尿病的病因是什么？", "1型糖尿病主要由自身免疫破坏胰岛β细胞引起，常可检测到GAD65等胰岛自身抗体，需要终身胰岛素治疗。"),
            ("What causes type 1 diabetes?", "Autoimmune destruction of pancreatic beta cells, usually with islet autoantibodies such as GAD65; it needs lifelong insulin."),
        ],
        "mcq": ("与1型糖尿病自身免疫相关的抗体是", ["抗核抗体", "GAD65抗体", "类风湿因子", "抗链O", "甲状腺球蛋白抗体"], "B"),
    },
    {
        "qa": [
            ("糖尿病酮症酸中毒的治疗原则是什么？", "糖尿病酮症酸中毒的治疗包括积极补液、小剂量静脉胰岛素、补钾并纠正诱因，密切监测血糖和电解质。"),
            ("What are the principles of treating diabetic ketoacidosis?", "Fluid replacement, low-dose intravenous insulin, potassium replacement and treating the trigger, with close monitoring of glucose and electrolytes."),
        ],
        "mcq": ("糖尿病酮症酸中毒治疗的首要措施是", ["补液", "大剂量口服降糖药", "立即补碱", "限制饮水", "运动治疗"], "A"),
    },
    {
        "qa": [
            ("胰岛素应该如何保存？", "未开封的胰岛素应在2–8℃冷藏保存，不可冷冻；开封使用中的胰岛素可在室温下保存约4周。"),
            ("How should insulin be stored?", "Unopened insulin is kept refrigerated at 2–8 °C and never frozen; an in-use pen or vial can stay at room temperature for about four weeks."),
        ],
        "mcq": ("未开封胰岛素的正确保存温度是", ["-20℃", "0℃以下", "2–8℃", "25–30℃", "37℃"], "C"),
    },
    {
        "qa": [
            ("磺脲类药物的主要不良反应是什么？", "磺脲类药物的主要不良反应是低血糖和体重增加，老年人和肾功能不全者使用时需特别注意。"),
            ("What are the main risks of sulfonylureas?", "Hypoglycaemia and weight gain, with extra caution in older adults and people with reduced kidney function."),
        ],
        "mcq": ("磺脲类降糖药最主要的不良反应是", ["低血糖", "腹泻", "生殖器感染", "乳酸酸中毒", "骨折"], "A"),
    },
    {
        "qa": [
            ("糖尿病前期的诊断标准是什么？", "空腹血糖受损为6.1–6.9 mmol/L（中国标准），糖耐量减低为OGTT 2小时血糖7.8–11.0 mmol/L。"),
            ("What defines prediabetes?", "Impaired fasting glucose (5.6–6.9 mmol/L by ADA, 6.1–6.9 by WHO), impaired glucose tolerance with a 2-hour OGTT value of 7.8–11.0 mmol/L, or an HbA1c of 5.7–6.4% (ADA)."),
        ],
        "mcq": ("糖耐量减低（IGT）是指OGTT 2小时血糖为", ["<7.8 mmol/L", "7.8–11.0 mmol/L", "≥11.1 mmol/L", "6.1–6.9 mmol/L", "≥13.9 mmol/L"], "B"),
    },
]

# Items of the embedded mini benchmarks. Written separately from FACTS (other wording), so training on
# the corpus can move the scores without the questions themselves being trained on.
BENCH_MCQ = [
    ("下列哪项血糖值可诊断糖尿病（有典型症状时）", ["随机血糖8.0 mmol/L", "随机血糖11.1 mmol/L", "空腹血糖6.0 mmol/L", "餐后1小时血糖9.0 mmol/L", "空腹血糖5.5 mmol/L"], "B"),
    ("糖尿病患者低密度脂蛋白胆固醇升高首选的调脂药物是", ["贝特类", "他汀类", "烟酸", "鱼油", "胆酸螯合剂"], "B"),
    ("下列降糖药中单独使用最不易引起低血糖的是", ["格列美脲", "胰岛素", "二甲双胍", "格列本脲", "格列齐特"], "C"),
    ("糖尿病酮症酸中毒时最常见的电解质紊乱需要补充的是", ["钠", "钾", "钙", "镁", "磷"], "B"),
    ("1型糖尿病的基本治疗是", ["饮食控制", "口服降糖药", "胰岛素", "运动", "减重手术"], "C"),
    ("妊娠期糖尿病首选的降糖药物是", ["二甲双胍", "格列本脲", "胰岛素", "SGLT2抑制剂", "DPP-4抑制剂"], "C"),
    ("糖尿病周围神经病变筛查常用的检查不包括", ["10 g尼龙丝", "128 Hz音叉", "踝反射", "腹部B超", "针刺痛觉"], "D"),
    ("具有减重作用的降糖药是", ["胰岛素", "磺脲类", "GLP-1受体激动剂", "噻唑烷二酮类", "格列奈类"], "C"),
    ("老年糖尿病患者低血糖风险高时HbA1c目标可放宽至", ["<6.0%", "<6.5%", "<8.0%", "<10%", "<12%"], "C"),
    ("糖尿病患者每年应至少检查一次的项目是", ["胃镜", "眼底检查", "骨髓穿刺", "头颅MRI", "肺功能"], "B"),
]
BENCH_CLOZE = [
    ("糖尿病的典型症状为“三多一少”，即多饮、多尿、多食和（）。", "体重减轻"),
    ("低血糖时口服葡萄糖后应在（）分钟后复测血糖。", "15"),
    ("二甲双胍最常见的不良反应是（）反应。", "胃肠道"),
    ("1型糖尿病是由于自身免疫破坏胰岛（）细胞所致。", "β"),
    ("糖尿病患者血压一般应控制在（）mmHg以下。", "130/80"),
    ("未开封的胰岛素应保存在（）℃的冰箱中。", "2–8"),
]
BENCH_DIALOG = [
    ("医生，我是2型糖尿病患者，最近早上起来空腹血糖总是8点多，该怎么办？", "1.回答需要建议监测夜间血糖以区分黎明现象和苏木杰反应 2.回答需要建议就医调整治疗方案"),
    ("我血糖控制得不错，还需要每年查眼底吗？", "1.回答需要指出每年仍需眼底检查 2.回答需要解释视网膜病变早期可无症状"),
    ("打胰岛素的时候手抖、出冷汗是怎么回事？", "1.回答需要指出可能是低血糖 2.回答需要给出立即补充糖分并复测血糖的建议"),
    ("I have type 2 diabetes and my feet feel numb. What should I do?", "1. The answer should mention diabetic peripheral neuropathy 2. It should advise daily foot checks and seeing a clinician"),
]

# General-domain MCQs (no diabetes content): the `general` evaluation of multi-stage runs asks them before and
# after every training stage, to see whether domain training costs general ability. Written for this project.
BENCH_GENERAL_MCQ = [
    ("水在标准大气压下的沸点是", ["50 °C", "80 °C", "100 °C", "120 °C", "150 °C"], "C"),
    ("一年中白昼最长的一天（北半球）是", ["春分", "夏至", "秋分", "冬至", "清明"], "B"),
    ("下列哪种动物是哺乳动物", ["鲨鱼", "海豚", "企鹅", "鳄鱼", "青蛙"], "B"),
    ("光在真空中的传播速度约为", ["3×10^5 m/s", "3×10^6 m/s", "3×10^8 m/s", "3×10^10 m/s", "3×10^12 m/s"], "C"),
    ("Which planet is closest to the Sun?", ["Venus", "Earth", "Mars", "Mercury", "Jupiter"], "D"),
    ("How many sides does a hexagon have?", ["Four", "Five", "Six", "Seven", "Eight"], "C"),
    ("Which gas do plants take in for photosynthesis?", ["Oxygen", "Nitrogen", "Carbon dioxide", "Helium", "Hydrogen"], "C"),
    ("What is 12 multiplied by 12?", ["124", "132", "144", "154", "164"], "C"),
]

# Held-out domain text: guideline-style passages in the corpus's style and vocabulary, written apart from FACTS
# and never curated, so training never sees them. Their perplexity before and after each stage shows whether
# the model learned the domain's language, which even a tiny model can, long before it can answer questions.
BENCH_DOMAIN_TEXT = [
    "糖尿病患者应每天检查双足，注意有无皮肤破损、水疱和颜色改变；每年至少接受一次足部专业检查，以早期发现神经病变和缺血。",
    "2型糖尿病患者确诊后应立即进行眼底检查，此后每年复查；糖尿病视网膜病变早期常无症状，规律筛查可以减少失明。",
    "糖尿病患者生病期间不要随意停用胰岛素，应增加血糖监测次数，保证饮水，出现持续呕吐或血酮升高时应及时就医。",
    "多数糖尿病患者每周应进行至少150分钟中等强度的有氧运动，并每周进行两到三次抗阻训练，运动前后注意监测血糖。",
    "Adults with diabetes should check their feet every day for cuts, blisters and colour changes, and have a foot "
    "examination by a professional at least once a year to find neuropathy and poor circulation early.",
    "A retinal examination is recommended at the diagnosis of type 2 diabetes and then every year; diabetic "
    "retinopathy often causes no symptoms at first, and regular screening prevents loss of vision.",
    "During illness people with diabetes should not stop insulin, should check glucose more often and drink enough "
    "fluid, and should seek care for persistent vomiting or raised blood ketones.",
    "Most adults with diabetes should do at least 150 minutes of moderate aerobic activity each week, with two or "
    "three sessions of resistance training, and check glucose before and after exercise.",
]

# General text with no diabetes content: its perplexity before and after each stage shows what domain training
# costs (or gives) the model's general language. Written for this project.
BENCH_GENERAL_TEXT = [
    "长城是中国古代修建的军事防御工程，东起山海关，西至嘉峪关，绵延数千公里，是世界著名的历史遗迹。",
    "水在阳光照射下蒸发成水蒸气，上升到高空遇冷凝结成云，云中的水滴变大后落下形成降雨，这就是水循环。",
    "做面包时先把面粉、酵母、盐和水揉成面团，静置发酵到体积变大，再整形放入烤箱，以两百度左右烘烤。",
    "高速铁路的列车时速可以超过三百公里，大大缩短了城市之间的旅行时间，也改变了人们出行的方式。",
    "The Moon orbits the Earth about once every twenty-seven days, and the changing angle of sunlight on its "
    "surface gives the phases we see from new moon to full moon.",
    "Plants use sunlight, water and carbon dioxide to make sugar in their leaves, and release oxygen into the air "
    "as a by-product of photosynthesis.",
    "A piano makes sound when a key moves a small felt hammer that strikes a tuned steel string inside the "
    "wooden case of the instrument.",
    "Football is played by two teams of eleven players who try to move the ball into the other team's goal "
    "without touching it with their hands or arms.",
]
